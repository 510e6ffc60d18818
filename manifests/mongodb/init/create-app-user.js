// Runs once, on an empty data directory (the image's /docker-entrypoint-initdb.d): the storage
// service's own user, which may read and write its database and nothing else.
const appDb = db.getSiblingDB(process.env.MONGO_APP_DB);
appDb.createUser({
  user: process.env.MONGO_APP_USER,
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: process.env.MONGO_APP_DB }],
});
