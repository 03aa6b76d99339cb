//! The largest micro-batch whose predicted peak fits in the memory available, with a safety
//! margin. Pure: the caller supplies the prediction per micro-batch and the available bytes
//! (RAM today; NVML's free device memory for a GPU run), so any device can use it.

/// Headroom kept above the predicted peak: a micro-batch fits when
/// `predicted × (1 + SAFETY_MARGIN) ≤ available`. 10 % because the measurement tests hold
/// the plan within 10 % of the measured whole-process peak for every shipped preset
/// (`tests/process_peak.rs`), and because what else runs on the machine moves MemAvailable while
/// a run trains; a larger margin would only shrink micro-batches that do fit.
pub const SAFETY_MARGIN: f64 = 0.10;

/// Bytes needed to run a prediction of `predicted` bytes, margin included.
pub fn with_margin(predicted: u64) -> u64 {
    (predicted as f64 * (1.0 + SAFETY_MARGIN)).ceil() as u64
}

/// The micro-batch chosen and its prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub micro_batch: usize,
    pub predicted: u64,
}

/// Not even a micro-batch of one fits: its prediction against what is available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    pub predicted: u64,
    pub available: u64,
}

/// Micro-batches a batch of `batch` may be split into, largest first, none above `cap`:
/// the divisors of `batch`, so that every optimiser step sees exactly the batch's examples.
pub fn candidates(batch: usize, cap: usize) -> Vec<usize> {
    (1..=batch.min(cap).max(1))
        .rev()
        .filter(|m| batch.is_multiple_of(*m))
        .collect()
}

/// The largest candidate micro-batch of `batch` (at most `cap`) whose prediction, with the
/// margin, fits in `available` bytes. `predict` gives the whole-process peak of a
/// micro-batch; it is asked from the largest down.
pub fn fit_micro_batch(
    batch: usize,
    cap: usize,
    available: u64,
    mut predict: impl FnMut(usize) -> u64,
) -> Result<Fit, NoFit> {
    let mut smallest = None;
    for m in candidates(batch, cap) {
        let predicted = predict(m);
        if with_margin(predicted) <= available {
            return Ok(Fit {
                micro_batch: m,
                predicted,
            });
        }
        smallest = Some(predicted);
    }
    Err(NoFit {
        predicted: smallest.unwrap_or(0),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction that grows with the micro-batch, as every plan does.
    fn linear(m: usize) -> u64 {
        100 + 50 * m as u64
    }

    #[test]
    fn only_divisors_of_the_batch_are_tried_and_never_above_the_cap() {
        assert_eq!(candidates(12, 12), vec![12, 6, 4, 3, 2, 1]);
        assert_eq!(candidates(12, 5), vec![4, 3, 2, 1]);
        assert_eq!(candidates(7, 7), vec![7, 1]);
        assert_eq!(candidates(1, 1), vec![1]);
    }

    #[test]
    fn the_largest_fitting_micro_batch_is_chosen_with_the_margin() {
        // m = 8 needs 500 × 1.1 = 550; 4 needs 300 × 1.1 = 330.
        let fit = fit_micro_batch(8, 8, 549, linear).unwrap();
        assert_eq!(fit.micro_batch, 4);
        assert_eq!(fit.predicted, 300);
        assert_eq!(fit_micro_batch(8, 8, 550, linear).unwrap().micro_batch, 8);
    }

    #[test]
    fn nothing_fits_reports_the_micro_batch_of_one() {
        let no = fit_micro_batch(8, 8, 100, linear).unwrap_err();
        assert_eq!(
            no,
            NoFit {
                predicted: 150,
                available: 100
            }
        );
    }
}
