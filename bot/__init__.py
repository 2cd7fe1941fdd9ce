"""The managers' Telegram bot (aiogram 3): a thin edge over `npf_loyalty.lookup`."""
