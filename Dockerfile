# prodlens: the worker (`prodlens run`), the simulator (`prodlens simulate`) and the CLI.
#   docker build -t prodlens:0.1.0 .
#   docker run --rm prodlens:0.1.0 run --broker kafka1:9092 --metrics-host 0.0.0.0
# Mount your prodlens.yaml and pass --config (docker-compose.yml does both).

FROM python:3.11.10-slim-bookworm AS build
# A compiler for any dependency without a wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY prodlens ./prodlens
COPY streams ./streams
COPY alerts ./alerts
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.10-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --create-home --uid 10001 prodlens
USER prodlens
WORKDIR /home/prodlens
EXPOSE 9108
ENTRYPOINT ["prodlens"]
CMD ["run", "--metrics-host", "0.0.0.0"]
