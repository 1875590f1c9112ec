// Loads Stylebase's protos with @grpc/proto-loader and calls the running services: the
// profile store's GetStyleProfile, similarity's FindSimilarArtists and a health check
// (the vendored grpc/health/v1). Prints one JSON line.
// Usage: node node_client.js <protos dir> <profile store> <similarity> <artist name>
"use strict";
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protos, storeTarget, similarityTarget, artist] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  [
    "stylebase/profile_store/v1/profile_store_service.proto",
    "stylebase/similarity/v1/similarity_service.proto",
    "grpc/health/v1/health.proto",
  ],
  { includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true },
);
const pkg = grpc.loadPackageDefinition(definition);
const credentials = grpc.credentials.createInsecure();
const deadline = () => new Date(Date.now() + 10000);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

async function main() {
  const store = new pkg.stylebase.profile_store.v1.ProfileStoreService(storeTarget, credentials);
  const similarity = new pkg.stylebase.similarity.v1.SimilarityService(
    similarityTarget,
    credentials,
  );
  const health = new pkg.grpc.health.v1.Health(storeTarget, credentials);
  const profile = await call(store, "GetStyleProfile", { artist_name: artist });
  const similar = await call(similarity, "FindSimilarArtists", { artist_name: artist, limit: 2 });
  const status = await call(health, "Check", {
    service: "stylebase.profile_store.v1.ProfileStoreService",
  });
  console.log(
    JSON.stringify({
      profile: profile.profile.artist_name,
      version: profile.profile.version,
      similar: similar.artists.map((a) => a.artist_name),
      health: status.status,
    }),
  );
  store.close();
  similarity.close();
  health.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
