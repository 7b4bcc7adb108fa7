//! One module per subcommand.

pub mod batch;
pub mod bench_decode;
pub mod embed;
pub mod engine;
pub mod eval_retrieval;
pub mod fetch;
pub mod generate;
pub mod pool;
pub mod retrieve;
pub mod tasks;
pub mod train_retriever;
