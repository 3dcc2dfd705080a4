# MLflow tracking server and model registry: Postgres backend, S3-style artifact store.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1
# The same MLflow as the clients (constraints.txt); psycopg2 and boto3 for the backends.
RUN pip install "mlflow==3.17.2" "psycopg2-binary>=2.9" "boto3>=1.34"
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
# The command (stores, hosts) is set in compose.yaml.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
