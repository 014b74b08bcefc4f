-- MLflow's backend store, next to Airflow's database (run once, when the data volume is new)
CREATE DATABASE mlflow;
