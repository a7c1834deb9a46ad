// Runs once, when MongoDB starts on an empty volume
// (/docker-entrypoint-initdb.d): the application's user, limited to the
// GridFS databases (buckets) it uses: `videos` and `mp3s` (the app's), and
// `spindle-deploys` (the platform's deploy records, which every host reads
// and writes at start-up). readWrite covers the indexes GridFS creates.
// host/tests/integration/k8s/credentials.rs runs the host and the worker as this user.
db.getSiblingDB("admin").createUser({
  user: process.env.MONGO_USERNAME,
  pwd: process.env.MONGO_PASSWORD,
  roles: [
    { role: "readWrite", db: "videos" },
    { role: "readWrite", db: "mp3s" },
    { role: "readWrite", db: "spindle-deploys" },
  ],
});
