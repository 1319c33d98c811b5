-- Runs once, when the postgres volume is created: MLflow's database is POSTGRES_DB (mlflow);
-- Prefect's server gets one of its own.
CREATE DATABASE prefect OWNER difflab;
