// The admin's periodic task form (django-celery-beat's script, as a file for the Content-Security-Policy): under the
// crontab field, say in words when the chosen crontab runs; the read-only translation row is hidden.
(() => {
  const $ = django.jQuery;
  const help = document.currentScript.dataset.crontabHelp;
  const readable = JSON.parse(document.getElementById("readable-crontabs").textContent);
  $(".field-crontab_translation").hide();
  $(".field-crontab").change(() => {
    const note = document.querySelector(".field-crontab .help");
    if (!note) return;
    note.textContent = help;
    note.append(document.createElement("br"), `Translation: ${readable[$("#id_crontab").val()]}`);
  });
})();
