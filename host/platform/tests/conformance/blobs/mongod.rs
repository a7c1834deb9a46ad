//! GridFS on a real `mongod` (`SPINDLE_TEST_MONGODB_URL`): every shared
//! behaviour.

use super::Backend;

every_behaviour!(Backend::mongod);
