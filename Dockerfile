FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core fonts-liberation2 git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY . .
RUN pip install --no-cache-dir -e .
ENV MICROSCOPE_DATA_DIR=/data
EXPOSE 8000
