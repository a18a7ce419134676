# PostgreSQL and Redis from Debian's packages, one image for both, for the image test
# (deploy/image_test.py) and run-local.sh (LOCAL_BACKING=debian) where no registry is reachable
# to pull their official images. Not for production: there the services use managed PostgreSQL
# and Redis (deploy/deployment.md).
#
#   podman run --user postgres IMAGE postgres    # PostgreSQL 15 on port 5432, trust auth
#   podman run --user redis IMAGE redis          # Redis on port 6379, nothing on disk
#
# Both listen on every address of their container: publish neither port beyond the machine.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="aiserver-test-backing" \
      org.opencontainers.image.vendor="aiserver"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && install -d -o postgres -g postgres /var/lib/postgresql/data \
 && runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/data \
      --auth=trust --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
 && echo "host all all all scram-sha-256" >> /var/lib/postgresql/data/pg_hba.conf \
 && printf '%s\n' '#!/bin/sh' 'exec /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/data -c "listen_addresses=*" -c unix_socket_directories=/tmp' > /usr/local/bin/postgres \
 && printf '%s\n' '#!/bin/sh' 'exec redis-server --bind 0.0.0.0 --protected-mode no --port 6379 --save "" --appendonly no' > /usr/local/bin/redis \
 && chmod 0755 /usr/local/bin/postgres /usr/local/bin/redis
CMD ["postgres"]
