-- EXAMPLE: the second database and role the compose example's MLflow server uses.
-- Runs once, when the Postgres volume is first created. Replace the password (it must
-- match POSTGRES_PASSWORD in infra/.env, which the compose file passes to MLflow).
CREATE ROLE mlflow LOGIN PASSWORD 'change-me';
CREATE DATABASE mlflow OWNER mlflow;
