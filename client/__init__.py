"""The site side: the ClientApp, local DP training and the privacy ledger."""
