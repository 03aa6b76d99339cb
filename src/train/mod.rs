//! The training engine: data, optimisers, schedules, checkpointing and the loop.
pub mod auto_batch;
pub mod checkpoint;
pub mod data;
pub mod evaluate;
pub mod events;
pub mod optim;
pub mod schedule;
pub mod setup;
pub mod sft_task;
pub mod step;
pub mod sts_task;
pub mod trainer;
