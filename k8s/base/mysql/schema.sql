-- Applied once, when MariaDB starts on an empty volume
-- (/docker-entrypoint-initdb.d). The statement is the one the auth function
-- runs itself (functions/auth/src/users.rs); the k8s test keeps them equal.
CREATE DATABASE IF NOT EXISTS auth;
USE auth;
CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY AUTO_INCREMENT, email VARCHAR(255) NOT NULL UNIQUE, password VARCHAR(255) NOT NULL);
