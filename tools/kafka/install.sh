#!/usr/bin/env bash
# Resolves Apache Kafka (tools/kafka/pom.xml) from Maven Central into the cache, once:
# $TASK_API_CACHE/kafka-<version>-<pom digest>/libs holds every jar the broker and its admin tools
# need (a changed pom.xml resolves again). Needs Java 17 and Maven. Prints the libs directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache=${TASK_API_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/task-api}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
digest=$(sha256sum "$here/pom.xml" | cut -c1-12)
target="$cache/kafka-$version-$digest"

if [ -f "$target/.complete" ]; then
  echo "$target/libs"
  exit 0
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool is missing (Java 17 and Maven are needed for Kafka)" >&2; exit 1; }
done
rm -rf "$target"
mkdir -p "$target"
mvn -q -B -f "$here/pom.xml" \
  -Dmaven.repo.local="$cache/m2" \
  dependency:copy-dependencies -DoutputDirectory="$target/libs" >&2
touch "$target/.complete"
echo "$target/libs"
