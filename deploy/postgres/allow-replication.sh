#!/bin/sh
# Runs once, when the postgres container initialises an empty volume: the backup service
# streams WAL and takes base backups over the replication protocol, which the image's
# pg_hba.conf does not allow from other containers.
set -eu
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
