//! shadowplane's developer tasks: `cargo xtask setup | test | bench | demo | eval | fuzz`.

mod bench;
mod cmd;
mod demo;
mod eval;
mod fuzz;
mod setup;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// shadowplane's developer tasks
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the wasm32-wasip1 target and Envoy 1.40 (idempotent)
    Setup,
    /// Run what CI runs: setup, fmt, clippy, the filter build, all tests, benches compiled
    Test {
        /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter)
        #[arg(last = true)]
        test_args: Vec<OsString>,
    },
    /// Run a benchmark; figures go to target/bench/
    Bench {
        /// Which benchmark: filter-overhead, host-runner, migration, model or xds-fanout
        name: String,
    },
    /// Run the end-to-end demo: Envoy, the filter, the control plane, two groups, load, a
    /// scenario in compressed time, and a report
    Demo(demo::Options),
    /// Run an evaluation; figures go to target/eval/
    Eval {
        /// Which evaluation: nab (the anomaly detector and forecaster on ../shared/data/nab)
        name: String,
    },
    /// Fuzz coverage-guided under cargo-fuzz for a while; crashes go to the target's artifacts/
    Fuzz {
        /// Which target: host-runner (the proxy-wasm ABI surface)
        name: String,
        /// How long to run, in seconds
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.task {
        Task::Setup => setup::setup(&root).map(drop),
        Task::Test { test_args } => test::test(&root, &test_args),
        Task::Bench { name } => bench::run(&root, &name),
        Task::Demo(opts) => demo::demo(&root, &opts).map(drop),
        Task::Eval { name } => eval::run(&root, &name),
        Task::Fuzz { name, secs } => fuzz::run(&root, &name, secs),
    }
}

/// The workspace root is the parent of xtask/, wherever cargo was invoked from.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest dir has no parent")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Task};

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_forwards_everything_after_the_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "e2e", "--", "--nocapture"]).unwrap();
        let Task::Test { test_args } = cli.task else {
            panic!("parsed as another task");
        };
        assert_eq!(test_args, ["e2e", "--", "--nocapture"]);
    }
}
