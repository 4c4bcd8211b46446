-- Whether someone shares how far they have read their chats. Hiding it also hides the other side's
-- from them (symmetric), so a chat shows receipts only when both of its people share them.
ALTER TABLE users ADD COLUMN show_read_receipts boolean NOT NULL DEFAULT true;
