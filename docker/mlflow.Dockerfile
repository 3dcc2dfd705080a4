# MLflow tracking server and model registry: PostgreSQL backend (psycopg2), S3 artifact store
# (boto3). Every package pinned by the project's constraints file (the clients' MLflow).
# Build from the repository root: docker build -f docker/mlflow.Dockerfile .
FROM python:3.11.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "mlflow==3.17.2" psycopg2-binary boto3 \
    && rm /tmp/constraints.txt
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
# Stores and allowed hosts are set in compose.yaml (MLFLOW_BACKEND_STORE_URI, the command).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
