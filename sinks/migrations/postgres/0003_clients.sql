-- Service clients (OAuth2 client_credentials): each acts for one merchant with its scopes.
-- Only an argon2id hash of the secret is kept.
CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
