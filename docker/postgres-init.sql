-- One database per engine; runs once, when the postgres volume is empty
-- (the official image executes /docker-entrypoint-initdb.d/*.sql as POSTGRES_USER).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
