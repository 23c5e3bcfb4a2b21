# syntax=docker/dockerfile:1.7
# Every Parley image from one file, since the five Python services build identically:
#   docker build --target service --build-arg SERVICE=chat -t parley-chat .
#   docker build --target web -t parley-web .
# A service image holds one virtual environment, /app, with exactly that service's package, parley-common
# and their locked third-party dependencies: no other service, no dev tools, no uv, no source tree. The
# install steps live in deploy/docker/install.sh, which tests/images runs into a fresh venv to prove each
# service installs and starts the way its image would. The processes are console scripts
# (parley-<service>-<process>); the Helm charts choose which one a pod runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.27-alpine

FROM ${PYTHON_IMAGE} AS uv
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1

# The service's locked requirements. This stage sees the whole workspace (uv reads every member's
# pyproject.toml), but only its output, requirements.txt, reaches the next stage: the dependency layer
# below is rebuilt when the lock changes, not when the code does.
FROM uv AS requirements
ARG SERVICE
WORKDIR /src
COPY . .
RUN test -n "${SERVICE}" && sh deploy/docker/install.sh requirements "${SERVICE}" /requirements.txt

FROM uv AS build
ARG SERVICE
COPY deploy/docker/install.sh /usr/local/bin/parley-install
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# Dependencies first: their own layer, cached across code changes.
RUN --mount=type=cache,target=/root/.cache/uv parley-install deps /tmp/requirements.txt /app
COPY libs/common /src/libs/common
COPY services/${SERVICE} /src/services/${SERVICE}
RUN --mount=type=cache,target=/root/.cache/uv parley-install project "${SERVICE}" /app /src

FROM ${PYTHON_IMAGE} AS service
RUN groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid parley --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin parley
COPY --from=build /app /app
ENV PATH=/app/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_HTTP_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001

# The web UI: static files (built by npm when web/ is a Node project) behind unprivileged nginx.
FROM ${NODE_IMAGE} AS web-files
RUN --mount=type=bind,target=/ctx sh /ctx/deploy/docker/web_files.sh /ctx /site

FROM ${NGINX_IMAGE} AS web
COPY deploy/docker/nginx.conf /etc/nginx/nginx.conf
COPY --from=web-files /site /usr/share/nginx/html
EXPOSE 8080
USER 101:101
