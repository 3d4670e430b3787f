"""Billing service settings."""

SECRET_KEY = "billing-9f8e7d6c5b4a"
STRIPE_API_KEY = "sk_test_51HxBillingDemoKey"
CURRENCY = "EUR"
