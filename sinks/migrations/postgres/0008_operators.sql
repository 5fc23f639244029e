-- Operators: logins and service clients of no merchant (merchant_id NULL). Their tokens carry no
-- merchant: they may use the admin routes and no merchant's data.
ALTER TABLE users ALTER COLUMN merchant_id DROP NOT NULL;
ALTER TABLE clients ALTER COLUMN merchant_id DROP NOT NULL;
