//! Writing safetensors files. candle saves through safetensors' temporary file, which is
//! created mode 0600 and renamed into place; a weights file should be readable as every
//! other file ftlab writes is (0666 less the umask, e.g. 0644), so that a run or a merged
//! model can be shared or served by another user.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

/// Saves `tensors` to `path` (as `candle_core::safetensors::save`), with the mode a newly
/// created file gets.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    set_mode(path)
}

/// One tensor to write with [`save_entries`]: host data is written from where it lives,
/// without a copy; a tensor is copied to host bytes only while it is written, so saving
/// holds at most one tensor's copy at a time (not a snapshot of everything, which for full
/// fine-tuning's AdamW moments is twice the model).
pub enum Entry<'a> {
    F32 { shape: Vec<usize>, data: &'a [f32] },
    U8 { shape: Vec<usize>, data: &'a [u8] },
    Tensor(Tensor),
}

impl Entry<'_> {
    /// The entry as a tensor on the CPU (a copy), for callers that want tensors.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let cpu = candle_core::Device::Cpu;
        Ok(match self {
            Entry::F32 { shape, data } => Tensor::from_slice(data, shape.as_slice(), &cpu)?,
            Entry::U8 { shape, data } => Tensor::from_slice(data, shape.as_slice(), &cpu)?,
            // A snapshot: state on a device is updated in place.
            Entry::Tensor(t) => t.copy()?,
        })
    }
}

/// An entry checked for writing (its dtype known to safetensors).
struct View<'a> {
    entry: &'a Entry<'a>,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

impl safetensors::View for View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        match self.entry {
            Entry::F32 { data, .. } => Cow::Borrowed(bytemuck::cast_slice(data)),
            Entry::U8 { data, .. } => Cow::Borrowed(data),
            // candle's own conversion (host bytes, little-endian), one tensor at a time.
            Entry::Tensor(t) => Cow::Owned(safetensors::View::data(t).into_owned()),
        }
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Saves `entries` to `path` as safetensors, streaming each entry's bytes to the file (see
/// [`Entry`]), with the mode a newly created file gets.
pub fn save_entries(entries: &[(String, Entry<'_>)], path: &Path) -> Result<()> {
    let views = entries
        .iter()
        .map(|(name, entry)| {
            let (dtype, shape): (safetensors::Dtype, Vec<usize>) = match entry {
                Entry::F32 { shape, .. } => (safetensors::Dtype::F32, shape.clone()),
                Entry::U8 { shape, .. } => (safetensors::Dtype::U8, shape.clone()),
                Entry::Tensor(t) => (safetensors::View::dtype(t), t.dims().to_vec()),
            };
            (
                name.as_str(),
                View {
                    entry,
                    dtype,
                    shape,
                },
            )
        })
        .collect::<Vec<_>>();
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    set_mode(path)
}

fn set_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask()))
        .with_context(|| format!("{}: cannot set its permissions", path.display()))
}

/// The process's umask (Linux reports it in /proc/self/status); 022 if unknown.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}
