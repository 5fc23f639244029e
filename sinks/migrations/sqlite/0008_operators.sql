-- Operators: logins and service clients of no merchant (merchant_id NULL). Their tokens carry no
-- merchant: they may use the admin routes and no merchant's data. SQLite cannot drop a NOT NULL,
-- so both tables are made again.
CREATE TABLE users_new (
    username      TEXT PRIMARY KEY,
    merchant_id   TEXT,
    password_hash TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
INSERT INTO users_new SELECT username, merchant_id, password_hash, scopes, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;

CREATE TABLE clients_new (
    client_id   TEXT PRIMARY KEY,
    merchant_id TEXT,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
INSERT INTO clients_new SELECT client_id, merchant_id, secret_hash, scopes, created_at FROM clients;
DROP TABLE clients;
ALTER TABLE clients_new RENAME TO clients;
