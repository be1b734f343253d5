-- A state database made by the store before sqlite-utils' Migrations (schema version 3, commit 3672166).
BEGIN TRANSACTION;
CREATE TABLE "audit" (
   "id" INTEGER PRIMARY KEY,
   "at" REAL,
   "actor" TEXT,
   "action" TEXT,
   "subject" TEXT,
   "detail" TEXT
);
INSERT INTO "audit" VALUES(1,1.79624891518889880179e+09,'engineer','engines.install','pathology_tile/1.0.0','{}');
CREATE TABLE "clinical" (
   "key" TEXT PRIMARY KEY,
   "values_json" TEXT,
   "updated_at" REAL
);
CREATE TABLE "deliveries" (
   "id" INTEGER PRIMARY KEY,
   "job_id" TEXT,
   "destination" TEXT,
   "path" TEXT,
   "sop_instance_uid" TEXT,
   "state" TEXT,
   "attempts" INTEGER,
   "next_attempt_at" REAL,
   "created_at" REAL,
   "delivered_at" REAL,
   "last_error" TEXT
);
INSERT INTO "deliveries" VALUES(1,'J000000000002','pacs','/x.dcm','1.2.826.0.1.3680043.10.9','pending',0,0.0,3.0,NULL,'');
CREATE TABLE "instances" (
   "sop_instance_uid" TEXT PRIMARY KEY,
   "sop_class_uid" TEXT,
   "series_uid" TEXT REFERENCES "series"("series_uid"),
   "study_uid" TEXT,
   "transfer_syntax" TEXT,
   "path" TEXT,
   "size" INTEGER,
   "calling_ae" TEXT,
   "received_at" REAL
, "header" BLOB, "header_syntax" TEXT);
CREATE TABLE "jobs" (
   "id" TEXT PRIMARY KEY,
   "pipeline" TEXT,
   "study_uid" TEXT,
   "series_uids" TEXT,
   "priority" INTEGER,
   "state" TEXT,
   "attempts" INTEGER,
   "lease_owner" TEXT,
   "lease_expires" REAL,
   "progress_done" INTEGER,
   "progress_total" INTEGER,
   "reason" TEXT,
   "result" TEXT,
   "created_at" REAL,
   "started_at" REAL,
   "finished_at" REAL
, "preemptions" INTEGER NOT NULL DEFAULT 0, "queued_at" REAL NOT NULL DEFAULT 0, "yielded_seconds" REAL NOT NULL DEFAULT 0);
INSERT INTO "jobs" VALUES('J000000000001','pathology','1.2.826.0.1.3680043.10.1','["1.2.826.0.1.3680043.10.1.1"]',5,'queued',0,'',0.0,0,0,'','{}',3.0,0.0,0.0,0,0.0,0.0);
CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
INSERT INTO "meta" VALUES('schema_version','3');
CREATE TABLE "series" (
   "series_uid" TEXT PRIMARY KEY,
   "study_uid" TEXT REFERENCES "studies"("study_uid"),
   "modality" TEXT,
   "series_description" TEXT,
   "instance_count" INTEGER,
   "first_received" REAL,
   "last_received" REAL,
   "state" TEXT,
   "route" INTEGER
, "reason" TEXT);
INSERT INTO "series" VALUES('1.2.826.0.1.3680043.10.1.1','1.2.826.0.1.3680043.10.1','SM','slide',1,1.0,2.0,'routed',0,NULL);
CREATE TABLE "slots" (
   "name" TEXT PRIMARY KEY,
   "device" TEXT,
   "job_id" TEXT,
   "busy_since" REAL,
   "busy_seconds" REAL,
   "up_since" REAL,
   "jobs_run" INTEGER,
   "preemptions" INTEGER,
   "resumes" INTEGER
);
CREATE TABLE "studies" (
   "study_uid" TEXT PRIMARY KEY,
   "first_received" REAL,
   "last_received" REAL,
   "state" TEXT
);
INSERT INTO "studies" VALUES('1.2.826.0.1.3680043.10.1',1.0,2.0,'open');
CREATE INDEX "idx_instances_series_uid"
    ON "instances" ("series_uid");
CREATE INDEX "idx_jobs_state_priority_created_at"
    ON "jobs" ("state", "priority", "created_at");
CREATE UNIQUE INDEX "idx_deliveries_destination_sop_instance_uid"
    ON "deliveries" ("destination", "sop_instance_uid");
CREATE INDEX "idx_deliveries_state_next_attempt_at"
    ON "deliveries" ("state", "next_attempt_at");
COMMIT;
