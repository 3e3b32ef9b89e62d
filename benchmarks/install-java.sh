#!/usr/bin/env bash
# Installs a headless Java runtime from Debian's packages when `java` is missing: Spark
# MLlib, the peer of `make bench`, runs on it. Idempotent and quiet: nothing happens when a
# java on PATH (or in $JAVA_HOME/bin) runs. Needs root or passwordless sudo, and
# apt-get. Exits non-zero, saying why, when it cannot install; `make bench` then runs
# without the Spark column.
set -euo pipefail

if java -version >/dev/null 2>&1 || "${JAVA_HOME:-/nonexistent}/bin/java" -version >/dev/null 2>&1
then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-java.sh: java not found and no apt-get here; install a Java 17+ runtime" \
         "(or set JAVA_HOME) for the Spark MLlib column" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "install-java.sh: java not found; run as root (or with passwordless sudo):" \
             "apt-get install default-jre-headless" >&2
        exit 1
    fi
fi
echo "install-java.sh: installing Debian's default-jre-headless (Java for Spark MLlib)" >&2
# Slim Debian images lack this folder and the JRE's post-install step fails without it.
"${sudo[@]}" mkdir -p /usr/share/man/man1
export DEBIAN_FRONTEND=noninteractive
for step in "apt-get update -qq" \
            "apt-get install -y -qq --no-install-recommends default-jre-headless"; do
    if ! out=$("${sudo[@]}" $step 2>&1); then
        echo "$out" >&2
        echo "install-java.sh: '$step' failed; the Spark MLlib column will be skipped" >&2
        exit 1
    fi
done
if ! java -version 2>&1 | head -n 1 >&2; then
    echo "install-java.sh: default-jre-headless is installed but java does not run" >&2
    exit 1
fi
