//! One module per subcommand.

pub mod batch;
pub mod bench_decode;
pub mod engine;
pub mod fetch;
pub mod generate;
pub mod tasks;
pub mod eval_retrieval;
pub mod train_retriever;
pub mod embed;
pub mod pool;
pub mod retrieve;
