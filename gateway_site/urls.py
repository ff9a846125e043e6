from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth
from django.urls import include, path, re_path

from accounts import members
from accounts import projects
from accounts import views as accounts
from audit import views as audit
from batches import pages as batches
from billing import views as billing
from proxy import pages as proxy

from . import health_views
from . import views as site

urlpatterns = [
    path("v1/", include("batches.urls")),  # /v1/files and /v1/batches; everything else under /v1/ is the proxy's
    path("v1/", include("proxy.urls")),
    path("admin/login/", site.admin_sign_in),
    path("admin/", admin.site.urls),
    path("api/", include("gateway_site.api")),
    path("login/", site.sign_in, name="login"),
    path("oidc/", include("mozilla_django_oidc.urls")),  # single sign-on; 404 while no issuer is set
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("password/", auth.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("password/reset/", site.password_reset, name="password_reset"),
    path("password/reset/sent/", auth.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", auth.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("password/reset/done/", auth.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("", billing.dashboard, name="dashboard"),
    path("switch/", accounts.switch_tenant, name="switch_tenant"),
    path("keys/", accounts.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", accounts.revoke, name="revoke_key"),
    path("keys/<int:key_id>/rotate/", accounts.rotate, name="rotate_key"),
    path("keys/<int:key_id>/project/", projects.move_key, name="move_key"),
    path("projects/", projects.project_list, name="projects"),
    path("projects/<int:project_id>/", projects.project_edit, name="project_edit"),
    path("members/", members.members, name="members"),
    path("members/invite/", members.invite, name="invite_member"),
    path("members/leave/", members.leave_tenant, name="leave_tenant"),
    path("members/<int:membership_id>/remove/", members.remove_member, name="remove_member"),
    path("members/<int:membership_id>/role/", members.change_role, name="change_role"),
    path("members/invitations/<int:invitation_id>/revoke/", members.revoke_invitation, name="revoke_invitation"),
    path("invite/<str:token>/", members.invitation, name="invitation"),
    path("budgets/", billing.budget_list, name="budgets"),
    path("budgets/contacts/", billing.alert_contacts, name="alert_contacts"),
    path("budgets/<int:budget_id>/thresholds/", billing.budget_thresholds, name="budget_thresholds"),
    path("requests/", billing.request_log, name="requests"),
    path("requests/export.csv", billing.request_export, name="requests_export"),
    path("activity/", audit.activity, name="activity"),
    path("activity/export.csv", audit.activity_export_csv, name="activity_export_csv"),
    path("activity/export.json", audit.activity_export_json, name="activity_export_json"),
    path("batches/", batches.batch_list, name="batches"),
    path("batches/files/<str:file_id>/", batches.batch_file, name="batch_file"),
    path("playground/", proxy.playground, name="playground"),
    path("playground/chat", proxy.playground_chat, name="playground_chat"),
    path("live/", proxy.live, name="live"),
    path("favicon.ico", site.favicon),
    path("health/detailed", health_views.detailed),
]

if settings.TOLLGATE_SERVE_STATIC:
    urlpatterns.append(
        re_path(r"^static/(?P<path>.*)$", site.static_file),
    )
