//! `pypelinin keygen PATH`: a CURVE key pair for a router, broker, pipeliner or client.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use pypelinin_common::curve::{encode_key, KeyPair};

/// Writes PATH (the secret key file, mode 0600) and PATH.pub, refusing to overwrite
/// either, and prints the public key: what goes into the router's authorized keys (for
/// a client) or every client's `--router-key` (for the router).
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let pair = KeyPair::generate().context("making a key pair")?;
    let public = pair.write(path).context("writing the key pair")?;
    eprintln!(
        "secret key written to {} (keep it private); public key to {}",
        path.display(),
        public.display()
    );
    println!("{}", encode_key(&pair.public));
    Ok(ExitCode::SUCCESS)
}
