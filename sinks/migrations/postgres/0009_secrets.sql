-- Keys the stages share through the store, made once by the first stage that needs one: `seal`
-- seals the tokens the API hands clients (posicao, statement cursors). URL-safe base64.
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
