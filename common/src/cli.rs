//! Command-line pieces every daemon shares, so that flags, environment variables and
//! defaults are spelled in one place.

/// Default router API address.
pub const DEFAULT_API: &str = "tcp://127.0.0.1:5555";
/// Default router broadcast address.
pub const DEFAULT_BROADCAST: &str = "tcp://127.0.0.1:5556";

/// The router's two addresses: the router binds them, every other process connects.
#[derive(clap::Args, Clone, Debug)]
pub struct Endpoints {
    /// Router API address (ZeroMQ ROUTER). With tcp, port 0 makes the router pick a free port.
    #[arg(long, env = "PYPELININ_API", default_value = DEFAULT_API)]
    pub api: String,
    /// Router broadcast address (ZeroMQ PUB). The router binds it and clients subscribe
    /// to it; pipeliners and brokers accept it so that every daemon takes the same
    /// flags, but need nothing from it (the router pushes them what they need).
    #[arg(long, env = "PYPELININ_BROADCAST", default_value = DEFAULT_BROADCAST)]
    pub broadcast: String,
}
