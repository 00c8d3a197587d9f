-- Names that need quoting; unicode, quotes, backslashes and control characters in names and values.
-- options: actions=insert,update,delete,truncate
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Tab.le ""x""" ("Id" int PRIMARY KEY, "col""q" text, "naïve ✓" text, "back\slash" text);
INSERT INTO "My Schema"."Tab.le ""x""" VALUES (1, E'tab\there\nnew "q" \\ end', 'Grüße 漢字 😀', E'\x01\x1f\x7f');
UPDATE "My Schema"."Tab.le ""x""" SET "col""q" = NULL;
DELETE FROM "My Schema"."Tab.le ""x""";
CREATE TABLE "select" ("from" int PRIMARY KEY);
INSERT INTO "select" VALUES (1);
TRUNCATE "My Schema"."Tab.le ""x""", "select";
