//! `portcullis token keygen|mint`: the local issuer for demos, tests and air-gapped appliances.
//! Argument parsing only; the work is in `dataplane::identity::issuer`.

use std::path::PathBuf;
use std::process::ExitCode;

use dataplane::identity::issuer::{self, KeyAlg, MintRequest};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Generate a signing key (PKCS#8 PEM, mode 0600) and its JWKS in DIR.
    Keygen {
        /// Directory to write `signing-key.pem` and `jwks.json` into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Signature algorithm.
        #[arg(long, default_value = "ed25519", value_parser = parse_alg)]
        alg: KeyAlg,
    },
    /// Mint a token signed with a key from `keygen`; prints it on stdout.
    Mint {
        /// The private key file (`signing-key.pem`).
        #[arg(long)]
        key: PathBuf,
        /// Subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Email claim.
        #[arg(long)]
        email: Option<String>,
        /// Groups, comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime: `90s`, `15m`, `12h`, `7d`.
        #[arg(long, default_value = "15m", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Audience (`aud`).
        #[arg(long, default_value = issuer::LOCAL_AUDIENCE)]
        aud: String,
        /// Issuer (`iss`); must match the gateway's `[identity] issuer`.
        #[arg(long, default_value = issuer::LOCAL_ISSUER)]
        iss: String,
        /// Mint a service-account (client-credentials style) token: `client_id` = `sub`.
        #[arg(long)]
        service: bool,
    },
}

fn parse_alg(s: &str) -> Result<KeyAlg, String> {
    s.parse()
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    issuer::parse_ttl(s).map_err(|e| e.to_string())
}

pub fn run(cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::Keygen { out, alg } => match issuer::keygen(&out, alg) {
            Ok(k) => {
                eprintln!(
                    "wrote {} (private, mode 0600) and {}; kid {}",
                    k.key_path.display(),
                    k.jwks_path.display(),
                    k.kid
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis token keygen: {e}");
                ExitCode::FAILURE
            }
        },
        TokenCommand::Mint {
            key,
            sub,
            email,
            groups,
            ttl,
            aud,
            iss,
            service,
        } => {
            let req = MintRequest {
                subject: sub,
                email,
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
                ttl,
                audience: aud,
                issuer: iss,
                service,
            };
            match issuer::mint(&key, &req) {
                Ok(token) => {
                    outln!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis token mint: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
