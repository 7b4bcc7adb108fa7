//! One module per subcommand.

pub mod args;
pub mod batch;
pub mod bench_decode;
pub mod bench_serve;
pub mod bench_train;
pub mod embed;
pub mod engine;
pub mod eval;
pub mod eval_retrieval;
pub mod fetch;
pub mod generate;
pub mod output;
pub mod pool;
pub mod retrieve;
pub mod run;
pub mod serve;
pub mod tasks;
pub mod train_gate;
pub mod train_lora;
pub mod train_retriever;
pub mod zoo;
