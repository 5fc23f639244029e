//! Logins and service clients. Password and secret hashes are produced and checked by `auth`;
//! the store only keeps them.

use sqlx::Row;

use crate::epoch::now_text;
use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub username: String,
    /// `None` for an operator: a login of no merchant.
    pub merchant_id: Option<String>,
    pub password_hash: String,
    pub scopes: Vec<String>,
}

/// A service client (OAuth2 `client_credentials`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    /// `None` for an operator's client.
    pub merchant_id: Option<String>,
    pub secret_hash: String,
    pub scopes: Vec<String>,
}

impl Store {
    /// Creates or replaces a login.
    pub async fn upsert_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (username, merchant_id, password_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (username) DO UPDATE SET merchant_id = excluded.merchant_id, \
             password_hash = excluded.password_hash, scopes = excluded.scopes",
        )
        .bind(user.username.clone())
        .bind(user.merchant_id.clone())
        .bind(user.password_hash.clone())
        .bind(user.scopes.join(" "))
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT username, merchant_id, password_hash, scopes FROM users WHERE username = $1")
            .bind(username.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let scopes: String = r.try_get(3)?;
            Ok(User {
                username: r.try_get(0)?,
                merchant_id: r.try_get(1)?,
                password_hash: r.try_get(2)?,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .transpose()
    }

    /// Creates or replaces a service client.
    pub async fn upsert_client(&self, client: &Client) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clients (client_id, merchant_id, secret_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (client_id) DO UPDATE SET merchant_id = excluded.merchant_id, \
             secret_hash = excluded.secret_hash, scopes = excluded.scopes",
        )
        .bind(client.client_id.clone())
        .bind(client.merchant_id.clone())
        .bind(client.secret_hash.clone())
        .bind(client.scopes.join(" "))
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn find_client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let row = sqlx::query("SELECT client_id, merchant_id, secret_hash, scopes FROM clients WHERE client_id = $1")
            .bind(client_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let scopes: String = r.try_get(3)?;
            Ok(Client {
                client_id: r.try_get(0)?,
                merchant_id: r.try_get(1)?,
                secret_hash: r.try_get(2)?,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .transpose()
    }
}
