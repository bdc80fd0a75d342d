//! `pypelinin pool …`: set, list and remove the router's pools.

use std::process::ExitCode;

use clap::Subcommand;
use pypelinin_client::{render, PipelineManager};
use pypelinin_common::protocol::{PoolRequest, PoolStatus};

/// What `pypelinin pool` does.
#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Creates a pool or changes its capacity. Shrinking it below what its running
    /// jobs hold stops nothing: no job of the pool starts until use drops below it.
    Set {
        /// Its name.
        name: String,
        /// Most slots its jobs hold at once, across every broker.
        slots: u32,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lists the pools: slots used, jobs queued for a slot, capacity.
    List {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Removes a pool; refused while a job of an open pipeline names it.
    Remove {
        /// Its name.
        name: String,
    },
}

/// Runs one `pypelinin pool` command.
pub fn run(pm: &mut PipelineManager, command: PoolCommand) -> anyhow::Result<ExitCode> {
    match command {
        PoolCommand::Set { name, slots, json } => {
            let pools = pm.pools(PoolRequest::Set { name, slots })?;
            if json {
                if let Some(p) = pools.first() {
                    println!("{}", serde_json::to_string(p)?);
                }
            } else {
                print!("{}", table(&pools));
            }
        }
        PoolCommand::List { json } => {
            let pools = pm.pools(PoolRequest::List)?;
            if json {
                println!("{}", serde_json::to_string(&pools)?);
            } else {
                print!("{}", table(&pools));
            }
        }
        PoolCommand::Remove { name } => {
            pm.pools(PoolRequest::Remove { name: name.clone() })?;
            println!("pool {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(list: &[PoolStatus]) -> String {
    let mut rows = vec![["POOL", "USED", "QUEUED", "CAPACITY"]
        .map(String::from)
        .to_vec()];
    for p in list {
        rows.push(vec![
            p.name.clone(),
            p.used.to_string(),
            p.queued.to_string(),
            p.capacity.to_string(),
        ]);
    }
    render::table(&rows)
}
