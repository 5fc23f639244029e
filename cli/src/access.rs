//! Who may call the API: `users add`, `clients add`, `keys rotate|list`.

use std::io::Read as _;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cashflow_auth::{KeyRing, KeyStatus, key_overlap};
use cashflow_core::MerchantId;
use cashflow_core::config::PipelineConfig;
use cashflow_http::{SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE};
use clap::Subcommand;

use crate::Common;
use crate::app::{connect_store, keys_dir};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create or replace a login; the password is read from standard input.
    Add {
        #[command(flatten)]
        of: Of,
        #[arg(long)]
        username: String,
        /// Scopes granted (space-separated). Default: lancamentos:write consolidado:read for a
        /// merchant's login, admin for an operator's.
        #[arg(long)]
        scopes: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create or replace a service client (OAuth2 client_credentials). Prints its secret once.
    Add {
        #[command(flatten)]
        of: Of,
        #[arg(long)]
        client_id: String,
        /// Scopes granted (space-separated). Default: lancamentos:write consolidado:read for a
        /// merchant's client, admin for an operator's.
        #[arg(long)]
        scopes: Option<String>,
    },
}

/// Whom a login or client acts for: one merchant, or none (an operator: the admin routes, and no
/// merchant's data, whatever its scopes).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Of {
    /// The merchant it acts for.
    #[arg(long)]
    merchant: Option<String>,
    /// An operator: it acts for no merchant.
    #[arg(long)]
    operator: bool,
}

impl Of {
    /// The merchant (none for an operator) and the scopes: those given, or the default for it.
    fn resolve(&self, scopes: Option<String>) -> Result<(Option<MerchantId>, Vec<String>)> {
        let merchant = self.merchant.as_deref().map(parse_merchant).transpose()?;
        let default = match merchant {
            Some(_) => format!("{SCOPE_WRITE} {SCOPE_READ}"),
            None => SCOPE_ADMIN.to_owned(),
        };
        Ok((merchant, scope_list(&scopes.unwrap_or(default))))
    }
}

/// "merchant loja-1", or "no merchant (an operator)".
fn acting_for(merchant: Option<&MerchantId>) -> String {
    merchant.map_or_else(|| "no merchant (an operator)".to_owned(), |m| format!("merchant {m}"))
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a signing key. The previous one keeps verifying until its tokens have expired (token
    /// TTL plus leeway); keys past that are deleted. Running services switch within seconds.
    Rotate,
    /// The signing keys and their status.
    List,
}

pub async fn users(command: UsersCommand, config: PipelineConfig, common: &Common) -> Result<()> {
    let UsersCommand::Add { of, username, scopes } = command;
    let (merchant, scopes) = of.resolve(scopes)?;
    check_name("--username", &username)?;
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.chars().count() < 8 {
        bail!("the password (read from standard input) must have at least 8 characters");
    }
    let store = connect_store(&config, common).await?;
    let user = cashflow_sinks::User {
        username: username.clone(),
        merchant_id: merchant.as_ref().map(ToString::to_string),
        password_hash: hash(password).await?,
        scopes,
    };
    store.upsert_user(&user).await?;
    let of = acting_for(merchant.as_ref());
    println!("user {username:?} can now act for {of} with scopes: {}", user.scopes.join(" "));
    Ok(())
}

pub async fn clients(command: ClientsCommand, config: PipelineConfig, common: &Common) -> Result<()> {
    let ClientsCommand::Add { of, client_id, scopes } = command;
    let (merchant, scopes) = of.resolve(scopes)?;
    check_name("--client-id", &client_id)?;
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let store = connect_store(&config, common).await?;
    let client = cashflow_sinks::Client {
        client_id: client_id.clone(),
        merchant_id: merchant.as_ref().map(ToString::to_string),
        secret_hash: hash(secret.clone()).await?,
        scopes,
    };
    store.upsert_client(&client).await?;
    let of = acting_for(merchant.as_ref());
    eprintln!("client {client_id:?} can now act for {of} with scopes: {}", client.scopes.join(" "));
    eprintln!("its secret is shown only now; store it safely:");
    println!("{secret}");
    Ok(())
}

pub fn keys(command: KeysCommand, config: &PipelineConfig, common: &Common) -> Result<()> {
    let dir = keys_dir(config, common);
    let overlap = key_overlap(config.services.auth.token_ttl);
    let ring = match command {
        KeysCommand::Rotate => KeyRing::rotate(&dir, overlap)?,
        KeysCommand::List => KeyRing::load_or_create(&dir, overlap)?,
    };
    println!("{:<20}  {:<20}  STATUS", "KID", "CREATED");
    for key in ring.keys() {
        let status = match &key.status {
            KeyStatus::Signing => "signing".to_owned(),
            KeyStatus::Verifying { until } => format!("verifying until {}", until.format("%Y-%m-%dT%H:%M:%SZ")),
            KeyStatus::Retired => "retired".to_owned(),
        };
        println!("{:<20}  {:<20}  {status}", key.kid, key.created.format("%Y-%m-%dT%H:%M:%SZ"));
    }
    if matches!(command, KeysCommand::Rotate) {
        println!("running services sign with {} within {} s", ring.signing().0, cashflow_auth::RELOAD_SECS);
    }
    Ok(())
}

fn parse_merchant(merchant: &str) -> Result<MerchantId> {
    MerchantId::parse(merchant).map_err(|e| anyhow::anyhow!("--merchant {e}"))
}

fn check_name(flag: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 128 || name.contains(':') {
        bail!("{flag} must be 1 to 128 characters, without ':'");
    }
    Ok(())
}

fn scope_list(scopes: &str) -> Vec<String> {
    scopes.split_whitespace().map(str::to_owned).collect()
}

async fn hash(secret: String) -> Result<String> {
    cashflow_auth::hash_password(secret).await.map_err(|e| anyhow::anyhow!("cannot hash the secret: {e}"))
}
