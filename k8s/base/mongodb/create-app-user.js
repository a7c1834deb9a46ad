// Runs once, when MongoDB starts on an empty volume
// (/docker-entrypoint-initdb.d): the application's user, limited to the two
// GridFS databases (buckets) `videos` and `mp3s`.
db.getSiblingDB("admin").createUser({
  user: process.env.MONGO_USERNAME,
  pwd: process.env.MONGO_PASSWORD,
  roles: [
    { role: "readWrite", db: "videos" },
    { role: "readWrite", db: "mp3s" },
  ],
});
