"""The repositories of SqlUnitOfWork, one module per aggregate pair."""
