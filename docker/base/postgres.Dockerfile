# syntax=docker/dockerfile:1
# A local stand-in for the official postgres:<major>-bookworm image, for
# machines that reach no container registry (scripts/base-images.sh builds it
# and tags it postgres:15-bookworm). It keeps the parts of the official
# image's contract that walcast's image and compose file use: the postgres
# user (uid 999), PostgreSQL under /usr/lib/postgresql/<major> on PATH,
# PGDATA=/var/lib/postgresql/data as a volume, listen_addresses = '*', and
# an entrypoint that initialises an empty data directory from POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB and runs /docker-entrypoint-initdb.d.
# PostgreSQL comes from Debian's own packages (15 on bookworm).
FROM debian:bookworm
ARG PG_MAJOR=15
RUN groupadd -r postgres --gid=999 \
 && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
 && install -d -o postgres -g postgres /var/lib/postgresql
RUN apt-get update \
 && apt-get install -y --no-install-recommends gosu locales \
 && localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8 \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* \
 && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
        "/usr/share/postgresql/${PG_MAJOR}/postgresql.conf.sample" \
 && install -d -o postgres -g postgres -m 3777 /var/run/postgresql
ENV LANG=en_US.utf8 \
    PG_MAJOR=${PG_MAJOR} \
    PATH=$PATH:/usr/lib/postgresql/${PG_MAJOR}/bin \
    PGDATA=/var/lib/postgresql/data
RUN install -d -o postgres -g postgres -m 1777 "$PGDATA"
VOLUME /var/lib/postgresql/data
COPY --chmod=0755 docker/base/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
