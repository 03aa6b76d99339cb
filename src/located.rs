//! Errors that point into input files: every problem found while reading a data file
//! (training examples, sentence pairs, a search corpus, a documents folder), each with its
//! file and line, reported together so that all of them can be fixed at once.
//!
//! It sits below `train` and `infer` because both read such files and report them alike.
use std::fmt;

/// How many problems a [`DataError`] lists; the rest are counted.
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// One problem found in the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; `None` for a problem with the whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found while loading or tokenising data. Its message lists the first
/// [`MAX_LISTED_PROBLEMS`] and counts the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// What was being done (`loading training data`, ...).
    pub stage: String,
    pub problems: Vec<Problem>,
}

impl DataError {
    /// `Ok` when there are no problems, else the error listing them.
    pub fn check(stage: &str, problems: Vec<Problem>) -> anyhow::Result<()> {
        if problems.is_empty() {
            return Ok(());
        }
        Err(DataError {
            stage: stage.to_string(),
            problems,
        }
        .into())
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} problem{} {}:",
            n,
            if n == 1 { "" } else { "s" },
            self.stage
        )?;
        for p in self.problems.iter().take(MAX_LISTED_PROBLEMS) {
            write!(f, "\n  {p}")?;
        }
        if n > MAX_LISTED_PROBLEMS {
            write!(f, "\n  ... and {} more", n - MAX_LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

impl std::error::Error for DataError {}
