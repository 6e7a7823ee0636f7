# The team tracking server: MLflow with the Postgres driver and S3 client, started by
# mlflow/server.sh (the same script as `make mlflow-ui`). Built by infra/compose.yaml.
FROM python:3.11-slim

ENV MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary>=2.9" "boto3>=1.28"
COPY mlflow/server.sh /usr/local/bin/mlflow-server
EXPOSE 5000
ENTRYPOINT ["bash", "/usr/local/bin/mlflow-server"]
