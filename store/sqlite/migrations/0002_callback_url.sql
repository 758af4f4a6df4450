-- Decision callbacks: where a permission's outcome is POSTed, set at request
-- time and never changed. NULL (rows from before, or no callback) reads as "".
ALTER TABLE permissions ADD COLUMN callback_url TEXT;
