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

/// CURVE keys of a process that connects to the router (broker, pipeliner, client). Both
/// or neither: with neither, the connection is plain, as it always was.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientKeys {
    /// This process's secret key file (written by `pypelinin keygen PATH`): connect to
    /// the router with CURVE authentication and encryption. Needs --router-key.
    #[arg(
        long,
        env = "PYPELININ_CURVE_SECRET",
        value_name = "PATH",
        global = true
    )]
    pub curve_secret: Option<std::path::PathBuf>,
    /// The router's public key: 40 Z85 characters, or the path of its `.pub` file.
    #[arg(
        long,
        env = "PYPELININ_ROUTER_KEY",
        value_name = "KEY_OR_PATH",
        global = true
    )]
    pub router_key: Option<String>,
}

impl ClientKeys {
    /// The sockets' setting; an error names the bad file or line (and never falls back
    /// to plaintext when keys were asked for).
    pub fn security(&self) -> Result<crate::curve::Security, crate::curve::CurveError> {
        crate::curve::Security::client_from(
            self.curve_secret.as_deref(),
            self.router_key.as_deref(),
        )
    }
}
