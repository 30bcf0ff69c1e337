"""The metadata store: the database of stored files, its reports and the JSON export."""
