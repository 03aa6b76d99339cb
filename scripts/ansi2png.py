#!/usr/bin/env python3
"""Render a terminal capture (`tmux capture-pane -e -p`: text with SGR colour codes) to PNG.

Usage: ansi2png.py CAPTURE.ansi OUT.png [--cols N --rows N]

Box-drawing lines, block elements and Braille dots (the charts) are drawn as shapes so
that they join up cell to cell; every other character comes from DejaVu Sans Mono.
Needs Pillow (pip install pillow).
"""
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
CW, CH = 9, 19  # cell size in pixels

BASE16 = [
    (0x1d, 0x1f, 0x21), (0xcc, 0x33, 0x33), (0x5f, 0xb3, 0x3b), (0xd7, 0xaf, 0x2f),
    (0x3f, 0x7f, 0xd0), (0xb0, 0x5c, 0xc8), (0x2a, 0xa8, 0xb8), (0xc5, 0xc8, 0xc6),
    (0x66, 0x69, 0x6b), (0xf2, 0x5f, 0x5f), (0x8c, 0xe0, 0x6a), (0xf5, 0xd5, 0x5a),
    (0x6f, 0xa8, 0xff), (0xd8, 0x8c, 0xf0), (0x5f, 0xe0, 0xee), (0xff, 0xff, 0xff),
]
DEFAULT_FG = (0xd8, 0xda, 0xd9)
DEFAULT_BG = (0x16, 0x18, 0x1c)


def xterm256(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


class Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = False
        self.dim = False
        self.reverse = False
        self.underline = False

    def copy(self):
        s = Style()
        s.__dict__.update(self.__dict__)
        return s

    def apply(self, params):
        p = [int(x) if x else 0 for x in params.split(";")] if params else [0]
        i = 0
        while i < len(p):
            c = p[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 2:
                self.dim = True
            elif c == 22:
                self.bold = self.dim = False
            elif c == 4:
                self.underline = True
            elif c == 24:
                self.underline = False
            elif c == 7:
                self.reverse = True
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = BASE16[c - 30]
            elif 90 <= c <= 97:
                self.fg = BASE16[c - 90 + 8]
            elif c == 39:
                self.fg = None
            elif 40 <= c <= 47:
                self.bg = BASE16[c - 40]
            elif 100 <= c <= 107:
                self.bg = BASE16[c - 100 + 8]
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(p):
                if p[i + 1] == 5 and i + 2 < len(p):
                    col = xterm256(p[i + 2])
                    i += 2
                elif p[i + 1] == 2 and i + 4 < len(p):
                    col = (p[i + 2], p[i + 3], p[i + 4])
                    i += 4
                else:
                    col = None
                if c == 38:
                    self.fg = col
                else:
                    self.bg = col
            i += 1


SGR = re.compile(r"\x1b\[([0-9;]*)m")
OTHER_ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def parse(text, cols, rows):
    grid = [[(" ", Style()) for _ in range(cols)] for _ in range(rows)]
    style = Style()
    for y, line in enumerate(text.split("\n")[:rows]):
        line = OTHER_ESC.sub("", line)
        x = 0
        pos = 0
        for m in SGR.finditer(line):
            for ch in line[pos:m.start()]:
                if x < cols:
                    grid[y][x] = (ch, style.copy())
                x += 1
            style.apply(m.group(1))
            pos = m.end()
        for ch in line[pos:]:
            if x < cols:
                grid[y][x] = (ch, style.copy())
            x += 1
    return grid


# Box drawing: which sides of the cell a character connects (up, down, left, right).
BOX = {
    "─": "lr", "│": "ud", "┌": "dr", "┐": "dl", "└": "ur", "┘": "ul", "├": "udr",
    "┤": "udl", "┬": "dlr", "┴": "ulr", "┼": "udlr", "╭": "dr", "╮": "dl", "╰": "ur", "╯": "ul",
}
BLOCKS = {"█": 8, "▉": 7, "▊": 6, "▋": 5, "▌": 4, "▍": 3, "▎": 2, "▏": 1}
BRAILLE_DOTS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3)]


def render(grid, out):
    rows, cols = len(grid), len(grid[0])
    img = Image.new("RGB", (cols * CW, rows * CH), DEFAULT_BG)
    d = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, SIZE)
    bold = ImageFont.truetype(FONT_BOLD, SIZE)
    for y in range(rows):
        for x in range(cols):
            ch, st = grid[y][x]
            fg = st.fg or DEFAULT_FG
            bg = st.bg or DEFAULT_BG
            if st.reverse:
                fg, bg = (st.bg or DEFAULT_BG), (st.fg or DEFAULT_FG)
            if st.dim:
                fg = tuple(int(c * 0.6 + b * 0.4) for c, b in zip(fg, bg))
            x0, y0 = x * CW, y * CH
            if bg != DEFAULT_BG:
                d.rectangle([x0, y0, x0 + CW - 1, y0 + CH - 1], fill=bg)
            if ch == " ":
                continue
            cx, cy = x0 + CW // 2, y0 + CH // 2
            if ch in BOX:
                sides = BOX[ch]
                if "l" in sides:
                    d.line([x0, cy, cx, cy], fill=fg)
                if "r" in sides:
                    d.line([cx, cy, x0 + CW - 1, cy], fill=fg)
                if "u" in sides:
                    d.line([cx, y0, cx, cy], fill=fg)
                if "d" in sides:
                    d.line([cx, cy, cx, y0 + CH - 1], fill=fg)
            elif ch in BLOCKS:
                w = CW * BLOCKS[ch] // 8
                d.rectangle([x0, y0, x0 + max(w, 1) - 1, y0 + CH - 1], fill=fg)
            elif 0x2800 <= ord(ch) <= 0x28FF:
                bits = ord(ch) - 0x2800
                for b, (dx, dy) in enumerate(BRAILLE_DOTS):
                    if bits & (1 << b):
                        px = x0 + 1 + dx * 4
                        py = y0 + 1 + dy * 5
                        d.rectangle([px, py, px + 2, py + 2], fill=fg)
            else:
                d.text((x0, y0 + 1), ch, font=bold if st.bold else font, fill=fg)
            if st.underline:
                d.line([x0, y0 + CH - 2, x0 + CW - 1, y0 + CH - 2], fill=fg)
    img.save(out)


def main():
    args = sys.argv[1:]
    cols, rows = 140, 42
    if "--cols" in args:
        i = args.index("--cols")
        cols = int(args[i + 1])
        del args[i:i + 2]
    if "--rows" in args:
        i = args.index("--rows")
        rows = int(args[i + 1])
        del args[i:i + 2]
    src, out = args
    with open(src, encoding="utf-8", errors="replace") as f:
        text = f.read()
    render(parse(text, cols, rows), out)


if __name__ == "__main__":
    main()
