-- One Postgres for both servers: a database each (run once, on an empty volume).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
