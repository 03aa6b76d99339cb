//! A run's batching: batches of `train.batch_size`, each run as micro-batches of
//! `train.micro_batch_size` (`train::auto_batch` chooses it), `grad_accum` batches per step.
use super::TrainConfig;

impl TrainConfig {
    /// Rows per forward/backward pass: `micro_batch_size`, else the whole batch.
    pub fn micro_batch(&self) -> usize {
        self.micro_batch_size.unwrap_or(self.batch_size).max(1)
    }

    /// Forward/backward passes per optimiser step (each batch split into micro-batches).
    pub fn micro_batches_per_step(&self) -> usize {
        self.grad_accum * self.batch_size.div_ceil(self.micro_batch())
    }

    /// Examples per optimiser step, whatever the micro-batch.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}
