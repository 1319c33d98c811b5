"""Operations: the local Prefect + MLflow stack and run housekeeping; not part of the modelling library."""
