"""The code interpreter as Model Context Protocol tools.

- tools.py: the tools themselves (`build_server`) and how results become MCP content;
- stdio.py: `tci mcp`, the tools over stdio calling a tci server through our SDK;
- tci/server/mcp.py: `/mcp` of `tci serve`, the tools acting in-process on the app's manager."""
